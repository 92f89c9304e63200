//! The cache's key schema (documented in docs/GUIDE.md, `essops cache warm`). Every
//! key of a site carries the site as a hash tag, so one site's keys live in
//! one Redis Cluster slot and can be swapped in one transaction.

/// Bumped when a value's shape changes; readers ask for the version they know.
pub const VERSION: &str = "v1";

pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(site: &str) -> Keys {
        Keys {
            prefix: format!("essops:{VERSION}:{{{site}}}"),
        }
    }

    /// When the site was warmed, from which server, and which keys it has.
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }
    pub fn latest(&self, table: &str) -> String {
        format!("{}:latest:{table}", self.prefix)
    }
    pub fn agg(&self, period: &str, table: &str) -> String {
        format!("{}:agg:{period}:{table}", self.prefix)
    }
    pub fn loss(&self) -> String {
        format!("{}:loss", self.prefix)
    }
    pub fn outliers(&self) -> String {
        format!("{}:outliers", self.prefix)
    }
    /// Where a run builds `key` before swapping it in.
    pub fn staging(&self, run: &str, key: &str) -> String {
        format!(
            "{}:staging:{run}:{}",
            self.prefix,
            &key[self.prefix.len() + 1..]
        )
    }
}
