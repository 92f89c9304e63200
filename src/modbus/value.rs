//! Register data types: how a value is laid out in 16-bit Modbus words, and
//! the decoding (ingest) and encoding (simulator) of each.

use serde::{Deserialize, Serialize};

/// The byte order of a 32/64-bit value across its 16-bit registers, named
/// as vendor manuals name it for 32 bits (A = the most significant byte).
/// For 64 bits the same rule is applied to all four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    /// `ABCD`: most significant word first, big-endian bytes: the Modbus convention.
    Big,
    /// `CDAB`: least significant word first ("word swap"), common in BMSs.
    Little,
    /// `BADC`: words in order, the two bytes inside each word swapped.
    ByteSwap,
    /// `DCBA`: every byte reversed (a little-endian value sent as is).
    Reversed,
}

impl WordOrder {
    /// The map's words for each order (`big` and `little` are the old names of ABCD and CDAB).
    pub const NAMES: [(&'static str, WordOrder); 6] = [
        ("ABCD", WordOrder::Big),
        ("BADC", WordOrder::ByteSwap),
        ("CDAB", WordOrder::Little),
        ("DCBA", WordOrder::Reversed),
        ("big", WordOrder::Big),
        ("little", WordOrder::Little),
    ];

    /// Whether the words come least significant first.
    fn words_reversed(self) -> bool {
        matches!(self, WordOrder::Little | WordOrder::Reversed)
    }

    /// Whether the two bytes inside each word are swapped.
    fn bytes_swapped(self) -> bool {
        matches!(self, WordOrder::ByteSwap | WordOrder::Reversed)
    }

    /// The register as it reads in this order's byte layout.
    fn word(self, w: u16) -> u16 {
        match self.bytes_swapped() {
            true => w.swap_bytes(),
            false => w,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// `width` bits of one register starting at bit `bit` (0 = least significant).
    Bits {
        bit: u8,
        width: u8,
    },
    /// One coil or discrete input: 0 or 1 (the client hands each bit over as a word).
    Bit,
}

/// A decoded measurement: integers stay exact, anything scaled is a float.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataType::Bits { bit, width } => write!(f, "bits {bit}..{}", bit + width),
            DataType::Bit => f.write_str("bit"),
            other => f.write_str(&format!("{other:?}").to_lowercase()),
        }
    }
}

impl DataType {
    pub const NAMES: &str = "u16, i16, u32, i32, u64, i64, f32, f64, bits";

    /// The type named in a register map; `bits` needs its bit range separately.
    pub fn parse(name: &str, bit: u8, width: u8) -> Option<DataType> {
        Some(match name {
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "bits" => DataType::Bits { bit, width },
            _ => return None,
        })
    }

    /// Registers the value occupies.
    pub fn words(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bits { .. } | DataType::Bit => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DataType::F32 | DataType::F64)
    }

    /// The range of raw integer values, for checking that a column can hold them.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            DataType::U16 => (0, u16::MAX.into()),
            DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
            DataType::U32 => (0, u32::MAX.into()),
            DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
            DataType::U64 => (0, u64::MAX.into()),
            DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
            DataType::Bits { width, .. } => (0, (1i128 << width) - 1),
            DataType::Bit => (0, 1),
            DataType::F32 | DataType::F64 => return None,
        })
    }

    /// Decodes the raw value from exactly [`words`](Self::words) registers.
    /// Non-finite floats (a device's garbage) decode to `None`.
    pub fn decode(self, words: &[u16], order: WordOrder) -> Option<Value> {
        // Another number of registers is not this type's value (found by
        // fuzzing: a short slice indexed past its end).
        if words.len() != usize::from(self.words()) {
            return None;
        }
        let wide = || -> u64 {
            let mut acc = 0u64;
            let mut fold = |w: &u16| acc = (acc << 16) | u64::from(order.word(*w));
            match order.words_reversed() {
                false => words.iter().for_each(&mut fold),
                true => words.iter().rev().for_each(&mut fold),
            }
            acc
        };
        let v = match self {
            DataType::U16 => Value::Int(words[0].into()),
            DataType::I16 => Value::Int((words[0] as i16).into()),
            DataType::Bits { bit, width } => {
                Value::Int(((u64::from(words[0]) >> bit) & ((1 << width) - 1)) as i64)
            }
            DataType::Bit => Value::Int(i64::from(words[0] & 1)),
            DataType::U32 => Value::Int(wide() as i64),
            DataType::I32 => Value::Int((wide() as u32 as i32).into()),
            DataType::U64 => match i64::try_from(wide()) {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(wide() as f64),
            },
            DataType::I64 => Value::Int(wide() as i64),
            DataType::F32 => Value::Float(f32::from_bits(wide() as u32).into()),
            DataType::F64 => Value::Float(f64::from_bits(wide())),
        };
        match v {
            Value::Float(f) if !f.is_finite() => None,
            v => Some(v),
        }
    }

    /// Encodes a raw value into `out` (which has [`words`](Self::words) registers).
    /// Integers saturate at the type's range; `Bits` merges into what is there.
    pub fn encode(self, raw: f64, order: WordOrder, out: &mut [u16]) {
        let put = |bits: u64, out: &mut [u16]| {
            let n = out.len();
            for (i, w) in out.iter_mut().enumerate() {
                let shift = 16 * (n - 1 - i);
                *w = order.word((bits >> shift) as u16);
            }
            if order.words_reversed() {
                out.reverse();
            }
        };
        let int = |raw: f64| {
            let (lo, hi) = self.int_range().unwrap_or((0, 0));
            (raw.round() as i128).clamp(lo, hi)
        };
        match self {
            DataType::U16 | DataType::I16 | DataType::Bit => out[0] = int(raw) as u16,
            DataType::Bits { bit, width } => {
                let mask = (((1u32 << width) - 1) << bit) as u16;
                out[0] = (out[0] & !mask) | (((int(raw) as u32) << bit) as u16 & mask);
            }
            DataType::U32 | DataType::I32 => put(int(raw) as u32 as u64, out),
            DataType::U64 | DataType::I64 => put(int(raw) as u64, out),
            DataType::F32 => put(u64::from((raw as f32).to_bits()), out),
            DataType::F64 => put(raw.to_bits(), out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WordOrder::{Big, ByteSwap, Little, Reversed};

    fn roundtrip(t: DataType, order: WordOrder, raw: f64) -> Option<Value> {
        let mut words = vec![0u16; t.words().into()];
        t.encode(raw, order, &mut words);
        t.decode(&words, order)
    }

    #[test]
    fn modbus_value_every_type_round_trips_in_every_byte_order() {
        for order in [Big, Little, ByteSwap, Reversed] {
            assert_eq!(
                roundtrip(DataType::U16, order, 65535.0),
                Some(Value::Int(65535))
            );
            assert_eq!(roundtrip(DataType::I16, order, -2.0), Some(Value::Int(-2)));
            assert_eq!(
                roundtrip(DataType::U32, order, 4e9),
                Some(Value::Int(4_000_000_000))
            );
            assert_eq!(
                roundtrip(DataType::I32, order, -70000.0),
                Some(Value::Int(-70000))
            );
            assert_eq!(
                roundtrip(DataType::U64, order, 5e12),
                Some(Value::Int(5_000_000_000_000))
            );
            assert_eq!(
                roundtrip(DataType::I64, order, -5e12),
                Some(Value::Int(-5_000_000_000_000))
            );
            assert_eq!(
                roundtrip(DataType::F32, order, 3.25),
                Some(Value::Float(3.25))
            );
            assert_eq!(
                roundtrip(DataType::F64, order, -1.0e-3),
                Some(Value::Float(-1.0e-3))
            );
        }
    }

    #[test]
    fn modbus_value_word_order_is_the_wire_layout() {
        // 0x12345678 big-endian words are 0x1234, 0x5678; word-swapped 0x5678, 0x1234.
        assert_eq!(
            DataType::U32.decode(&[0x1234, 0x5678], Big),
            Some(Value::Int(0x1234_5678))
        );
        assert_eq!(
            DataType::U32.decode(&[0x5678, 0x1234], Little),
            Some(Value::Int(0x1234_5678))
        );
        // 1.0f32 = 0x3F800000.
        assert_eq!(
            DataType::F32.decode(&[0x3F80, 0], Big),
            Some(Value::Float(1.0))
        );
        assert_eq!(
            DataType::F32.decode(&[0, 0x3F80], Little),
            Some(Value::Float(1.0))
        );
        assert_eq!(
            DataType::I32.decode(&[0xFFFF, 0xFFFE], Big),
            Some(Value::Int(-2))
        );
        assert_eq!(
            DataType::I16.decode(&[0x8000], Big),
            Some(Value::Int(-32768))
        );
        assert_eq!(
            DataType::U64.decode(&[0, 0, 0, 1], Little),
            Some(Value::Int(1 << 48))
        );
        let mut w = [0u16; 4];
        DataType::F64.encode(1.0, Big, &mut w);
        assert_eq!(w, [0x3FF0, 0, 0, 0]);
    }

    /// Each order against bytes written by hand from the layout vendor manuals
    /// print: 1.5f32 is 0x3FC00000, so A=3F B=C0 C=00 D=00.
    #[test]
    fn modbus_value_byte_orders_match_hand_written_frames() {
        let cases = [
            (Big, [0x3FC0, 0x0000]),
            (ByteSwap, [0xC03F, 0x0000]),
            (Little, [0x0000, 0x3FC0]),
            (Reversed, [0x0000, 0xC03F]),
        ];
        for (order, words) in cases {
            assert_eq!(
                DataType::F32.decode(&words, order),
                Some(Value::Float(1.5)),
                "{order:?}"
            );
        }
        // 0x0102030405060708 as u64: ABCD = 0102 0304 0506 0708, BADC swaps the
        // bytes of each word, CDAB reverses the words, DCBA reverses all eight bytes.
        let v = Some(Value::Int(0x0102_0304_0506_0708));
        assert_eq!(
            DataType::U64.decode(&[0x0102, 0x0304, 0x0506, 0x0708], Big),
            v
        );
        assert_eq!(
            DataType::U64.decode(&[0x0201, 0x0403, 0x0605, 0x0807], ByteSwap),
            v
        );
        assert_eq!(
            DataType::U64.decode(&[0x0708, 0x0506, 0x0304, 0x0102], Little),
            v
        );
        assert_eq!(
            DataType::U64.decode(&[0x0807, 0x0605, 0x0403, 0x0201], Reversed),
            v
        );
        let mut w = [0u16; 2];
        DataType::F32.encode(1.5, Reversed, &mut w);
        assert_eq!(w, [0x0000, 0xC03F]);
    }

    #[test]
    fn modbus_value_bits_share_a_register() {
        let low = DataType::Bits { bit: 0, width: 4 };
        let flag = DataType::Bits { bit: 4, width: 1 };
        let mut w = [0u16];
        low.encode(9.0, Big, &mut w);
        flag.encode(1.0, Big, &mut w);
        assert_eq!(w, [0b1_1001]);
        assert_eq!(low.decode(&w, Big), Some(Value::Int(9)));
        assert_eq!(flag.decode(&w, Big), Some(Value::Int(1)));
        low.encode(99.0, Big, &mut w); // saturates at 15, leaves the flag alone
        assert_eq!(w, [0b1_1111]);
    }

    #[test]
    fn modbus_value_garbage_floats_are_dropped_not_stored() {
        assert_eq!(DataType::F32.decode(&[0x7FC0, 0], Big), None); // NaN
        assert_eq!(DataType::F32.decode(&[0x7F80, 0], Big), None); // +inf
        assert_eq!(
            DataType::U64.decode(&[0xFFFF; 4], Big),
            Some(Value::Float(u64::MAX as f64))
        );
    }

    #[test]
    fn modbus_value_wrong_register_count_is_no_value() {
        // fuzz/seeds/modbus_answer/regression-short-slice: an answer of two
        // registers decoded as every type.
        assert_eq!(DataType::U16.decode(&[], Big), None);
        assert_eq!(DataType::U32.decode(&[1], Little), None);
        assert_eq!(DataType::F64.decode(&[1, 2], Big), None);
        assert_eq!(DataType::U32.decode(&[0, 7], Big), Some(Value::Int(7)));
    }

    proptest::proptest! {
        /// Decoding what was encoded gives it back, for every integer type
        /// (any value in its range; 64-bit ones within f64's exact range,
        /// which is what a raw f64 carries) and every float, in both orders.
        #[test]
        fn modbus_value_decode_inverts_encode(pick in 0usize..9, x in proptest::num::f64::ANY, unit in 0.0f64..1.0, o in 0usize..4) {
            let order = [Big, Little, ByteSwap, Reversed][o];
            let t = [
                DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::U64,
                DataType::I64, DataType::F32, DataType::F64, DataType::Bits { bit: 3, width: 5 },
            ][pick];
            let exact = 9_007_199_254_740_992i128; // 2^53
            let raw = match t.int_range() {
                Some((lo, hi)) => {
                    let (lo, hi) = (lo.max(-exact) as f64, hi.min(exact) as f64);
                    (lo + (hi - lo) * unit).round()
                }
                None if t == DataType::F32 => f64::from(x as f32),
                None => x,
            };
            let got = roundtrip(t, order, raw);
            match raw.is_finite() {
                true => proptest::prop_assert_eq!(got.map(Value::as_f64), Some(raw), "{:?} {:?}", t, order),
                false => proptest::prop_assert_eq!(got, None),
            }
        }
    }
}
