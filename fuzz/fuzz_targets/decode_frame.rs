//! Decodes arbitrary bytes as one websocket frame. Decoding must never panic, and whatever
//! decodes must survive `encode` → `decode` unchanged.
#![no_main]

use cairn_sync::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let frame = message.encode();
        match Message::decode(&frame) {
            Ok(again) => assert_eq!(again, message, "encode → decode changed the message"),
            Err(e) => panic!("a message we encoded does not decode: {e} ({message:?})"),
        }
    }
});
