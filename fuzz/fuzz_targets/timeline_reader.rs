//! Any bytes given to the timeline reader, plain or zstd, and replayed
//! through the live model, must end in records or an error: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unixpeer_user::timeline::{conns, reader::Reader, replay::Replay};

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.jsonl");
    let Ok(reader) = Reader::from_reader(path, std::io::Cursor::new(data.to_vec())) else { return };
    let Ok(mut replay) = Replay::from_reader(reader) else { return };
    if let Ok(c) = conns::collect(&mut replay) {
        let _ = replay.model();
        use unixpeer_user::timeline::summary::{By, write};
        // Recorded identities name the ends with --by unit and container.
        for by in [By::Comm, By::Unit, By::Container] {
            let mut sink = Vec::new();
            let _ = write(&mut sink, &c, false, by);
        }
    }
});
