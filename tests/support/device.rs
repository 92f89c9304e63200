//! A Modbus TCP device written from the specification, not from essops:
//! it serves registers, coils and discrete inputs set by hand (functions 1
//! to 4), answers exception 0x02 for any address it does not hold, and
//! never answers a unit it does not know. Tests change its registers
//! while it runs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// (unit, function) → address → word (bits: 0 or 1).
pub type Image = BTreeMap<(u8, u8), BTreeMap<u16, u16>>;

#[derive(Clone, Default)]
pub struct HandDevice {
    pub image: Arc<Mutex<Image>>,
}

impl HandDevice {
    /// Starts serving on a free loopback port; returns the address.
    pub fn serve(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let image = self.image.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let image = image.clone();
                std::thread::spawn(move || answer_all(stream, &image));
            }
        });
        addr
    }

    /// Holding registers of `unit` from `at`.
    pub fn holding(&self, unit: u8, at: u16, words: &[u16]) {
        self.put(unit, 3, at, words);
    }

    pub fn put(&self, unit: u8, function: u8, at: u16, words: &[u16]) {
        let mut image = self.image.lock().unwrap();
        let space = image.entry((unit, function)).or_default();
        for (i, w) in words.iter().enumerate() {
            space.insert(at + i as u16, *w);
        }
    }
}

fn answer_all(mut s: TcpStream, image: &Mutex<Image>) {
    loop {
        let mut head = [0u8; 7];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
        let mut pdu = vec![0u8; len.saturating_sub(1)];
        if s.read_exact(&mut pdu).is_err() || pdu.len() < 5 {
            return;
        }
        let unit = head[6];
        let function = pdu[0];
        let start = u16::from_be_bytes([pdu[1], pdu[2]]);
        let count = u16::from_be_bytes([pdu[3], pdu[4]]);
        let Some(reply) = reply(&image.lock().unwrap(), unit, function, start, count) else {
            continue; // an unknown unit: silence, as on a serial bus
        };
        let mut frame = head[..4].to_vec();
        frame.extend(((reply.len() + 1) as u16).to_be_bytes());
        frame.push(unit);
        frame.extend(reply);
        if s.write_all(&frame).is_err() {
            return;
        }
    }
}

/// The PDU answering a read, by the Modbus Application Protocol v1.1b3 (6.1–6.4).
fn reply(image: &Image, unit: u8, function: u8, start: u16, count: u16) -> Option<Vec<u8>> {
    if !image.keys().any(|(u, _)| *u == unit) {
        return None;
    }
    let exception = |code: u8| Some(vec![function | 0x80, code]);
    let Some(space) = image.get(&(unit, function)) else {
        return exception(0x02);
    };
    let words: Option<Vec<u16>> = (0..count)
        .map(|i| space.get(&start.checked_add(i)?).copied())
        .collect();
    let Some(words) = words else {
        return exception(0x02);
    };
    let mut out = vec![function];
    match function {
        1 | 2 => {
            let mut bytes = vec![0u8; usize::from(count).div_ceil(8)];
            for (i, w) in words.iter().enumerate() {
                bytes[i / 8] |= ((*w & 1) as u8) << (i % 8);
            }
            out.push(bytes.len() as u8);
            out.extend(bytes);
        }
        _ => {
            out.push((words.len() * 2) as u8);
            out.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        }
    }
    Some(out)
}
