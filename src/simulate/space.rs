//! The register space one simulated endpoint serves: which device's block
//! holds which registers, and the words of a block at a given second.

use std::collections::BTreeMap;

use super::model::Model;
use crate::config::Site;
use crate::modbus::map::{RegisterKind, TableMap};
use crate::schema::DeviceId;

#[derive(Debug, Clone)]
pub struct Block {
    pub table: TableMap,
    pub device: DeviceId,
    pub start: u16,
    pub len: u16,
}

/// Blocks by (unit, kind), sorted by start.
#[derive(Debug, Default)]
pub struct Space {
    blocks: BTreeMap<(u8, RegisterKind), Vec<Block>>,
}

impl Space {
    /// The blocks of every table the map serves from one of `endpoints`.
    pub fn new(site: &Site, endpoints: &[&str]) -> Space {
        let mut space = Space::default();
        for t in &site.register_map.tables {
            if !endpoints.contains(&t.endpoint.as_str()) {
                continue;
            }
            let kinds: std::collections::BTreeSet<_> = t.fields.iter().map(|f| f.kind).collect();
            for device in t.spec.devices(site) {
                // check_devices has proven unit and range at config load.
                let unit = t.unit_of(&device).unwrap_or(0);
                for &kind in &kinds {
                    space.blocks.entry((unit, kind)).or_default().push(Block {
                        table: t.clone(),
                        device: device.clone(),
                        start: t.block_start(&device) as u16,
                        len: t.block_len() as u16,
                    });
                }
            }
        }
        for v in space.blocks.values_mut() {
            v.sort_by_key(|b| b.start);
        }
        space
    }

    pub fn device_count(&self) -> usize {
        self.blocks.values().map(Vec::len).sum()
    }

    /// The block holding all of `[addr, addr + count)`, if one does.
    pub fn find(&self, unit: u8, kind: RegisterKind, addr: u16, count: u16) -> Option<&Block> {
        let blocks = self.blocks.get(&(unit, kind))?;
        let i = blocks.partition_point(|b| b.start <= addr).checked_sub(1)?;
        let b = &blocks[i];
        (u32::from(addr) + u32::from(count) <= u32::from(b.start) + u32::from(b.len)).then_some(b)
    }
}

impl Block {
    /// The block's registers at second `t`, fields encoded as the map says.
    pub fn words(&self, model: &Model, kind: RegisterKind, t: i64) -> Vec<u16> {
        let mut words = vec![0u16; self.len.into()];
        for f in self.table.fields.iter().filter(|f| f.kind == kind) {
            let physical = model.value(self.table.spec.table, &f.column, &self.device, t);
            let raw = (physical - f.offset) / f.scale;
            let at = usize::from(f.at);
            f.dtype.encode(
                raw,
                f.order,
                &mut words[at..at + usize::from(f.dtype.words())],
            );
        }
        words
    }
}
