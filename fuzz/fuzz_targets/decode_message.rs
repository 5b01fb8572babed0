//! Fuzz the wire decoder: any frames, never a panic; whatever decodes
//! re-encodes and decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pantry_shared::Message;

fuzz_target!(|data: &[u8]| {
    // Frames separated by 0xFF 0x00: lets the fuzzer vary their count.
    let frames: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    if let Ok(message) = Message::from_frames(&frames) {
        let again = Message::from_frames(&message.to_frames()).expect("re-encoded message decodes");
        assert_eq!(again, message);
        for part in &message.body {
            let _ = (part.as_text(), part.as_json());
        }
        let _ = pantry_shared::commands::status::parse(&message);
        let _ = pantry_shared::commands::register_client::parse(&message);
        let _ = pantry_shared::commands::exec::parse(&message);
        let _ = pantry_shared::commands::upload::parse(&message);
    }
});
