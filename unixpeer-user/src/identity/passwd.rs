//! User names from `/etc/passwd`, read once: resolving a uid per process
//! through NSS would load libraries and may ask the network.

use foldhash::HashMap;

/// uid -> login name.
#[derive(Debug, Default)]
pub(crate) struct Passwd {
    names: HashMap<u32, Box<str>>,
}

impl Passwd {
    /// Lines are `name:password:uid:...`; malformed ones are skipped, and the
    /// first name of a uid wins, as getpwuid(3) finds it.
    pub(crate) fn parse(file: &[u8]) -> Self {
        let mut names = HashMap::default();
        for line in file.split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else { continue };
            let mut fields = line.split(':');
            let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else { continue };
            // NIS compat entries (`+`, `-name`) name no uid of their own.
            if name.is_empty() || name.starts_with(['+', '-']) {
                continue;
            }
            if let Ok(uid) = uid.parse() {
                names.entry(uid).or_insert_with(|| name.into());
            }
        }
        Self { names }
    }

    pub(crate) fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(|n| &**n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_by_uid_first_wins_malformed_skipped() {
        let p = Passwd::parse(
            b"root:x:0:0:root:/root:/bin/bash\nbroken\n:x:5::\nalice:x:1000:1000::/home/a:/bin/sh\n\
              toor:x:0:0::/:/bin/sh\n+::::::\nbob:x:notanumber:0::/:\n\xff:x:7:7::/:\n",
        );
        assert_eq!(p.name(0), Some("root"));
        assert_eq!(p.name(1000), Some("alice"));
        assert_eq!(p.name(5), None);
        assert_eq!(p.name(7), None);
        assert_eq!(p.name(4242), None);
    }
}
