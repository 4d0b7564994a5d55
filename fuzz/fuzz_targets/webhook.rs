//! Fuzzes what a forge's webhook body and a pull-request comment become, after the signature
//! check (which needs no fuzzing: it compares a MAC before anything is parsed). For every
//! forge and every event name Slipway understands, `parse_payload` must return an event or a
//! `Malformed` error, never panic (nor may `payload_repository`); `parse_command` must accept
//! only commands that print back to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_forge::{ForgeKind, KNOWN_EVENTS, parse_command, parse_payload, payload_repository};

fuzz_target!(|data: &[u8]| {
    for forge in ForgeKind::ALL {
        for event in KNOWN_EVENTS {
            let _ = parse_payload(forge, event, data);
        }
        // Which repository a delivery is about is read from the same untrusted body.
        let _ = payload_repository(forge, data);
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(Some(command)) = parse_command(&text) {
        let shown = command.to_string();
        assert_eq!(
            parse_command(&shown).ok().flatten().as_ref(),
            Some(&command),
            "{shown}"
        );
    }
});
