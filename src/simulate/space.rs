//! The register space one simulated endpoint serves: which device's block
//! holds which registers, and the words of a block at a given second.

use std::collections::BTreeMap;

use super::model::Model;
use super::sunspec::{SunSpace, SunSpecOptions};
use crate::config::Site;
use crate::modbus::map::{RegisterKind, TableMap};
use crate::modbus::value::DataType;
use crate::schema::DeviceId;

#[derive(Debug, Clone)]
pub struct Block {
    pub table: TableMap,
    pub device: DeviceId,
    /// First address of this space's part of the block, and its length.
    pub start: u16,
    pub len: u16,
    /// Where that part begins inside the device's block (its first field's `at`).
    pub lead: u16,
}

/// Blocks by (unit, kind), sorted by start.
#[derive(Debug, Default)]
pub struct Space {
    blocks: BTreeMap<(u8, RegisterKind), Vec<Block>>,
    /// A SunSpec site's devices (then there are no blocks).
    pub sun: Option<SunSpace>,
}

impl Space {
    /// The blocks of every device the site serves from one of `endpoints`.
    pub fn new(site: &Site, endpoints: &[&str], sunspec: &SunSpecOptions) -> Space {
        let mut space = Space::default();
        if site.register_map.sunspec {
            space.sun = Some(SunSpace::new(site, endpoints, sunspec));
            return space;
        }
        for t in &site.register_map.tables {
            for device in t.spec.devices(site) {
                // check_devices has proven endpoint, unit and range at config load.
                let Ok(at) = site.address(t, &device) else {
                    continue;
                };
                if !endpoints.contains(&at.endpoint.as_str()) {
                    continue;
                }
                for (kind, lo, hi) in t.extents() {
                    space
                        .blocks
                        .entry((at.unit, kind))
                        .or_default()
                        .push(Block {
                            table: t.clone(),
                            device: device.clone(),
                            start: (at.start + u64::from(lo)) as u16,
                            len: (hi - lo) as u16,
                            lead: lo as u16,
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
        if let Some(sun) = &self.sun {
            return sun.device_count();
        }
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
            let raw = match f.dtype {
                // A coil shows the value's lowest bit, so it changes over time.
                DataType::Bit => physical.rem_euclid(2.0).floor(),
                _ => (physical - f.offset) / f.scale,
            };
            let at = usize::from(f.at - self.lead);
            f.dtype.encode(
                raw,
                f.order,
                &mut words[at..at + usize::from(f.dtype.words())],
            );
        }
        words
    }
}
