//! A device group: the part of a site one ingest process polls
//! (`--devices bank:1-5,pcs,etc`), so a site too large for one host can be
//! split across hosts. Banks take their racks along. Each group has its own
//! run lock and spool folder (`<spool>/<site>/@<group>/<server>/`), and every
//! device it claims is locked across hosts, so two processes never poll the
//! same device.

use std::collections::BTreeSet;

use crate::config::Site;
use crate::schema::{DeviceId, Table};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupError {
    #[error(
        "--devices `{0}`: expected a comma-separated list of bank:N or bank:N-M (with its racks), pcs, pcs:N or pcs:N-M, and etc"
    )]
    Syntax(String),
    #[error("--devices: site `{site}` has no {what} {id}")]
    Unknown {
        site: String,
        what: &'static str,
        id: u16,
    },
}

/// Which devices of a site one process polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    banks: BTreeSet<u16>,
    pcs: BTreeSet<u16>,
    /// `pcs` without ids: every PCS of the site.
    all_pcs: bool,
    etc: bool,
    /// The spec as given, normalised: names the group's lock and spool folder.
    pub label: String,
}

/// `N` or `N-M`.
fn ids(text: &str) -> Option<BTreeSet<u16>> {
    let (lo, hi) = match text.split_once('-') {
        Some((lo, hi)) => (lo.parse().ok()?, hi.parse().ok()?),
        None => {
            let n = text.parse().ok()?;
            (n, n)
        }
    };
    (lo <= hi).then(|| (lo..=hi).collect())
}

impl Group {
    pub fn parse(spec: &str) -> Result<Group, GroupError> {
        let bad = || GroupError::Syntax(spec.to_string());
        let mut group = Group {
            banks: BTreeSet::new(),
            pcs: BTreeSet::new(),
            all_pcs: false,
            etc: false,
            label: String::new(),
        };
        for item in spec.split(',').map(str::trim) {
            match item.split_once(':') {
                Some(("bank", range)) => group.banks.extend(ids(range).ok_or_else(bad)?),
                Some(("pcs", range)) => group.pcs.extend(ids(range).ok_or_else(bad)?),
                None if item == "pcs" => group.all_pcs = true,
                None if item == "etc" => group.etc = true,
                _ => return Err(bad()),
            }
        }
        group.label = group.normalised();
        Ok(group)
    }

    fn normalised(&self) -> String {
        let list = |name: &str, set: &BTreeSet<u16>| {
            set.iter()
                .map(|n| format!("{name}:{n}"))
                .collect::<Vec<_>>()
        };
        let mut parts = list("bank", &self.banks);
        match self.all_pcs {
            true => parts.push("pcs".into()),
            false => parts.extend(list("pcs", &self.pcs)),
        }
        if self.etc {
            parts.push("etc".into());
        }
        parts.join(",")
    }

    /// Every bank and PCS named exists on `site`.
    pub fn check(&self, site: &Site) -> Result<(), GroupError> {
        let unknown = |what, id| GroupError::Unknown {
            site: site.name.clone(),
            what,
            id,
        };
        if let Some(b) = self
            .banks
            .iter()
            .find(|b| !site.banks.iter().any(|k| k.id == **b))
        {
            return Err(unknown("bank", *b));
        }
        match self
            .pcs
            .iter()
            .find(|p| !site.pcs.iter().any(|k| k.id == **p))
        {
            Some(p) => Err(unknown("PCS", *p)),
            None => Ok(()),
        }
    }

    /// Whether this group polls `device` of `table`.
    pub fn includes(&self, table: Table, device: &DeviceId) -> bool {
        let first = device.first().map(|d| *d as u16);
        match table {
            Table::Bank | Table::Rack => first.is_some_and(|b| self.banks.contains(&b)),
            Table::Pcs => self.all_pcs || first.is_some_and(|p| self.pcs.contains(&p)),
            Table::Etc => self.etc,
        }
    }

    /// The devices this group locks: one per bank, PCS and the site's etc.
    pub fn device_locks(&self, site: &Site) -> Vec<String> {
        device_locks(site, |table, id| {
            self.includes(table, &id.map_or_else(Vec::new, |i| vec![i as i16]))
        })
    }
}

/// The devices of `site` that `claims` (table, id) locks, one per bank, PCS
/// and the etc device, named `bank-N`, `pcs-N`, `etc`.
pub fn device_locks(site: &Site, claims: impl Fn(Table, Option<u16>) -> bool) -> Vec<String> {
    let banks = site.banks.iter().map(|b| (Table::Bank, Some(b.id), "bank"));
    let pcs = site.pcs.iter().map(|p| (Table::Pcs, Some(p.id), "pcs"));
    let etc = site
        .has_table(Table::Etc)
        .then_some((Table::Etc, None, "etc"));
    banks
        .chain(pcs)
        .chain(etc)
        .filter(|(table, id, _)| claims(*table, *id))
        .map(|(_, id, name)| match id {
            Some(id) => format!("{name}-{id}"),
            None => name.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_parses_and_normalises() {
        let g = Group::parse("bank:3-4, pcs, etc,bank:1").unwrap();
        assert_eq!(g.label, "bank:1,bank:3,bank:4,pcs,etc");
        assert!(g.includes(Table::Rack, &vec![3, 7]));
        assert!(!g.includes(Table::Rack, &vec![2, 1]));
        assert!(g.includes(Table::Pcs, &vec![9]));
        assert!(g.includes(Table::Etc, &vec![]));
        let only = Group::parse("bank:2").unwrap();
        assert!(!only.includes(Table::Pcs, &vec![1]) && !only.includes(Table::Etc, &vec![]));
        for bad in ["", "bank", "bank:2-1", "rack:1", "bank:x"] {
            assert!(
                matches!(Group::parse(bad), Err(GroupError::Syntax(_))),
                "{bad}"
            );
        }
    }
}
