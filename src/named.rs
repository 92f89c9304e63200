//! Closed sets of values named by words (config values, catalog type
//! names): each set is one table of (word, value), read both ways here.

/// The value `word` names in `names`.
pub fn by_name<T: Copy>(names: &[(&str, T)], word: &str) -> Option<T> {
    names.iter().find(|(n, _)| *n == word).map(|(_, v)| *v)
}

/// The first word that names `value` in `names` ("?" for none).
pub fn name_of<T: PartialEq>(names: &[(&'static str, T)], value: T) -> &'static str {
    names
        .iter()
        .find(|(_, v)| *v == value)
        .map_or("?", |(n, _)| n)
}
