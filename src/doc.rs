//! TOML documents that operators write (sites.toml, register maps): turning
//! a byte span into the file, line, column and key of an error. A leaf: the
//! config and the register-map parser both use it, and it knows neither.

use std::path::PathBuf;

use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Points at one place in the file.
    #[error("{file}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// The text being validated, for turning byte spans into lines and columns.
pub struct Doc<'a> {
    pub text: &'a str,
    /// The file's name in messages.
    pub label: String,
}

impl Doc<'_> {
    pub fn error(&self, at: usize, key: impl Into<String>, message: impl Into<String>) -> DocError {
        let before = &self.text[..at.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        DocError::Invalid {
            file: self.label.clone(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn at<T>(
        &self,
        value: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> DocError {
        self.error(value.span().start, key, message)
    }

    /// toml's own errors (syntax, unknown field, wrong type) carry a span but
    /// not always the key; recover the key from the text around the span.
    pub fn toml_error(&self, e: &toml::de::Error) -> DocError {
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim().to_string();
        self.error(span.start, key_near(self.text, span), message)
    }
}

/// The bare key at or just before `span`: the span itself when it is a key
/// (unknown field), else the `key =` that precedes the value.
fn key_near(text: &str, span: std::ops::Range<usize>) -> String {
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let at = text.get(span.clone()).unwrap_or("");
    if !at.is_empty()
        && at.chars().all(is_key_char)
        && text
            .get(span.end..)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    {
        return at.to_string();
    }
    // Spans are byte offsets; one inside a character finds no key.
    let before = text
        .get(..span.start.min(text.len()))
        .unwrap_or("")
        .trim_end();
    let Some(before) = before.strip_suffix('=') else {
        return String::from("(document)");
    };
    let before = before.trim_end();
    // Where the key begins: after the last character that cannot be in one
    // (which may be wider than a byte).
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !is_key_char(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    match &before[start..] {
        "" => String::from("(document)"),
        key => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_key_near_finds_the_key_before_a_value() {
        let t = "a = 1\nracks = \"x\"\n";
        let at = t.find('"').unwrap();
        assert_eq!(key_near(t, at..at + 3), "racks");
        let k = t.find("racks").unwrap();
        assert_eq!(key_near(t, k..k + 5), "racks");
    }
}
