//! What a device sends back: an MBAP header and a PDU, checked against a
//! request (unit, function, count taken from the input), then every data
//! type decoded from the registers in every byte order.
#![no_main]
use essops::modbus::client::{Expected, decode_answer, frame_header};
use essops::modbus::value::{DataType, WordOrder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [unit, function, count, rest @ ..] = data else {
        return;
    };
    let expected = Expected {
        unit: *unit,
        function: if function % 2 == 0 { 3 } else { 4 },
        count: u16::from(*count % 126),
    };
    let Some(header) = rest.get(..7) else {
        return;
    };
    let header: [u8; 7] = header.try_into().unwrap();
    let Ok((_, len)) = frame_header(&header) else {
        return;
    };
    let pdu = &rest[7..rest.len().min(7 + len - 1)];
    let Ok(words) = decode_answer(expected, header[6], pdu) else {
        return;
    };
    for name in ["u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64", "bits"] {
        let Some(dtype) = DataType::parse(name, unit % 16, 1 + count % 16) else {
            continue;
        };
        for (_, order) in WordOrder::NAMES {
            let _ = dtype.decode(&words, order);
        }
    }
});
