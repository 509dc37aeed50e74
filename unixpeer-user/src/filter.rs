//! Row filters. A connection matches a filter when either end matches, so
//! `--pid 42` also shows who process 42 talks to.

use crate::{
    follow::{Peer, Resolved},
    identity::{Container, Identity, Processes},
    model::{KernelState, Model, SockType},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("bad glob {0:?}: {1}")]
    Glob(String, &'static str),
}

/// All conditions must hold; each may be satisfied by either end.
#[derive(Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub path: Option<Glob>,
    pub types: Vec<SockType>,
    pub listening: bool,
    /// `--unit`: the process's systemd unit matches one of these.
    pub units: Vec<Glob>,
    /// `--container`: the process is in one of these containers.
    pub containers: Vec<ContainerPattern>,
    /// `--user`: the process's user is one of these (names or uids).
    pub users: Vec<String>,
}

/// A test on who a process is.
type IdentityTest = fn(&Filter, Option<&Identity>) -> bool;

impl Filter {
    /// The conditions on who a process is that were asked for.
    fn identity_tests(&self) -> impl Iterator<Item = IdentityTest> {
        let tests: [(bool, IdentityTest); 3] = [
            (!self.units.is_empty(), |f, id| {
                id.and_then(|i| i.unit.as_deref()).is_some_and(|u| f.units.iter().any(|g| g.matches(u)))
            }),
            (!self.containers.is_empty(), |f, id| {
                id.and_then(|i| i.container.as_ref()).is_some_and(|c| f.containers.iter().any(|p| p.matches(c)))
            }),
            (!self.users.is_empty(), |f, id| id.is_some_and(|i| f.users.iter().any(|u| user_is(u, i)))),
        ];
        tests.into_iter().filter(|(asked, _)| *asked).map(|(_, test)| test)
    }
}

fn user_is(wanted: &str, id: &Identity) -> bool {
    id.user.as_deref() == Some(wanted) || (id.uid.is_some() && wanted.parse().ok() == id.uid)
}

/// `--container`: an id, an id prefix of 12 or more characters (as docker
/// takes one), a name (docker's or podman's, where their state gives it;
/// an LXC container's), or a glob on any of those.
#[derive(Clone, Debug)]
pub struct ContainerPattern {
    text: String,
    glob: Glob,
}

impl ContainerPattern {
    pub(crate) fn new(text: &str) -> Result<Self, FilterError> {
        Ok(Self { text: text.to_owned(), glob: Glob::new(text)? })
    }

    fn matches(&self, c: &Container) -> bool {
        *c.id == *self.text
            || (self.text.len() >= 12 && c.id.starts_with(&self.text))
            || self.glob.matches(&c.id)
            || c.name.as_deref().is_some_and(|n| self.glob.matches(n))
    }
}

impl Filter {
    pub fn matches(&self, model: &Model, a: u64, b: Option<u64>) -> bool {
        let either = |test: &dyn Fn(u64) -> bool| test(a) || b.is_some_and(test);
        (self.pids.is_empty() || either(&|i| model.holders(i).iter().any(|h| self.pids.contains(&h.pid))))
            && (self.comms.is_empty()
                || either(&|i| {
                    model.holders(i).iter().any(|h| self.comms.iter().any(|c| comm_eq(c, h.comm.as_bytes())))
                }))
            && self.path.as_ref().is_none_or(|g| {
                // The live model's sockets may have only the name their
                // events carried (`path`), a client's the one it connected to.
                either(&|i| {
                    model.get(i).is_some_and(|s| {
                        s.name.as_ref().is_some_and(|n| g.matches(&n.to_string()))
                            || s.path.as_deref().is_some_and(|p| g.matches(p))
                    })
                })
            })
            && (self.types.is_empty() || either(&|i| model.get(i).is_some_and(|s| self.types.contains(&s.sock_type))))
            && (!self.listening || either(&|i| model.get(i).is_some_and(|s| s.state == KernelState::Listen)))
            && self
                .identity_tests()
                .all(|test| either(&|i| model.holders(i).iter().any(|h| test(self, model.identity(h.pid)))))
    }
}

/// The kernel keeps 15 bytes of a command name; a longer argument still
/// matches the truncated comm.
impl Filter {
    /// The same rules for a live event: either the process that acted or
    /// the one at the other end may match.
    pub fn matches_event(&self, r: &Resolved, ids: &Processes) -> bool {
        let e = &r.event;
        let peers: &[crate::follow::Holder] = match &r.peer {
            Peer::Holders(h) => h,
            Peer::Listener(h) => std::slice::from_ref(h),
            Peer::Unknown => &[],
        };
        (self.pids.is_empty() || self.pids.contains(&e.pid) || peers.iter().any(|h| self.pids.contains(&h.pid)))
            && (self.comms.is_empty()
                || self
                    .comms
                    .iter()
                    .any(|c| comm_eq(c, e.comm.as_bytes()) || peers.iter().any(|h| comm_eq(c, h.comm.as_bytes()))))
            && self.path.as_ref().is_none_or(|g| e.path.as_ref().is_some_and(|p| g.matches(p)))
            && (self.types.is_empty() || self.types.contains(&e.sock_type))
            && (!self.listening || e.kind == unixpeer_common::EventKind::Listen || matches!(r.peer, Peer::Listener(_)))
            && self
                .identity_tests()
                .all(|test| test(self, ids.get(e.pid)) || peers.iter().any(|h| test(self, ids.get(h.pid))))
    }
}

fn comm_eq(wanted: &str, comm: &[u8]) -> bool {
    const COMM_MAX: usize = unixpeer_common::TASK_COMM_LEN - 1;
    let w = wanted.as_bytes();
    let w = if w.len() > COMM_MAX { &w[..COMM_MAX] } else { w };
    w == comm
}

/// A shell-style pattern: `*` (any run, `/` included), `?`, `[a-z]`, `[!x]`, `\` escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Char(char),
    Any,
    Star,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Result<Self, FilterError> {
        let bad = |why| FilterError::Glob(pattern.to_owned(), why);
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => Token::Star,
                '?' => Token::Any,
                '\\' => Token::Char(chars.next().ok_or_else(|| bad("trailing backslash"))?),
                '[' => {
                    let negated = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = chars.next().ok_or_else(|| bad("unclosed ["))?;
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        let lo = if c == '\\' { chars.next().ok_or_else(|| bad("unclosed ["))? } else { c };
                        let hi = if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') => {
                                    ranges.push((lo, lo));
                                    ranges.push(('-', '-'));
                                    break;
                                }
                                Some(h) => h,
                                None => return Err(bad("unclosed [")),
                            }
                        } else {
                            lo
                        };
                        ranges.push((lo, hi));
                    }
                    Token::Class { negated, ranges }
                }
                c => Token::Char(c),
            });
        }
        Ok(Self { tokens })
    }

    /// The text every match starts with: the pattern up to its first
    /// wildcard or class.
    pub(crate) fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        // Classic linear backtracking: remember the last star and retry it
        // one character further on mismatch.
        let (mut t, mut p) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Star) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(tok) if tok.matches_char(text[t]) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|tok| *tok == Token::Star)
    }
}

impl Token {
    fn matches_char(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Star => false,
            Token::Class { negated, ranges } => ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn globs() {
        assert!(m("/run/*", "/run/user/1000/bus"));
        assert!(m("@*", "@myabs"));
        assert!(!m("@*", "/tmp/x"));
        assert!(m("/tmp/?.sock", "/tmp/x.sock"));
        assert!(m("*[0-9].sock", "/tmp/w12.sock"));
        assert!(!m("*[!0-9].sock", "/tmp/w12.sock"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*a*a*", "aaaa"));
        assert!(!m("abc", "abcd"));
        assert!(m("", ""));
        assert!(m("[]x]", "]"));
        assert!(m("[a-]", "-"));
    }

    #[test]
    fn bad_globs_are_errors() {
        assert!(Glob::new("[abc").is_err());
        assert!(Glob::new("ab\\").is_err());
    }

    fn resolved(pid: u32, peer: u32) -> Resolved {
        let event = crate::events::Event::sample(unixpeer_common::EventKind::Connect, 1, pid, "c", 1, 2);
        let holder = crate::follow::Holder { pid: peer, comm: "s".into(), fd: Some(3) };
        Resolved { event, peer: Peer::Holders([holder].into_iter().collect()) }
    }

    /// pid 1: alice in web.service; pid 2: root in docker container
    /// `billing-db`.
    fn two_processes() -> Processes {
        let mut ids = Processes::default();
        let web =
            Identity { uid: Some(1000), user: Some("alice".into()), unit: Some("web.service".into()), container: None };
        ids.learn(1, web);
        let container = Container {
            runtime: crate::identity::Runtime::Docker,
            id: "0123456789abcdef".repeat(4).into(),
            name: Some("billing-db".into()),
            pod_uid: None,
            qos: None,
        };
        ids.learn(
            2,
            Identity { uid: Some(0), user: Some("root".into()), container: Some(container), ..Identity::default() },
        );
        ids
    }

    #[test]
    fn unit_container_and_user_match_either_end() {
        let ids = two_processes();
        let filter = |units: &[&str], containers: &[&str], users: &[&str]| Filter {
            units: units.iter().map(|u| Glob::new(u).unwrap()).collect(),
            containers: containers.iter().map(|c| ContainerPattern::new(c).unwrap()).collect(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            ..Filter::default()
        };
        let (one_way, other_way, strangers) = (resolved(1, 2), resolved(2, 1), resolved(3, 4));
        let yes = |f: &Filter| f.matches_event(&one_way, &ids) && f.matches_event(&other_way, &ids);
        let no = |f: &Filter| !f.matches_event(&one_way, &ids) && !f.matches_event(&other_way, &ids);
        assert!(yes(&filter(&["web.service"], &[], &[])));
        assert!(yes(&filter(&["web*"], &[], &[])));
        assert!(no(&filter(&["db.service"], &[], &[])));
        assert!(yes(&filter(&[], &["0123456789ab"], &[])), "a 12-character prefix");
        assert!(no(&filter(&[], &["0123456789a"], &[])), "too short a prefix");
        assert!(yes(&filter(&[], &["*cdef"], &[])));
        assert!(yes(&filter(&[], &[&"0123456789abcdef".repeat(4)], &[])));
        assert!(yes(&filter(&[], &["billing-db"], &[])), "docker's name for it");
        assert!(yes(&filter(&[], &["billing-*"], &[])));
        assert!(no(&filter(&[], &["billing"], &[])));
        assert!(yes(&filter(&[], &[], &["alice"])));
        assert!(yes(&filter(&[], &[], &["1000"])));
        assert!(no(&filter(&[], &[], &["bob"])));
        // Every condition holds, each at either end.
        assert!(yes(&filter(&["web.service"], &["0123456789ab"], &["root"])));
        assert!(no(&filter(&["web.service"], &["fedcba987654"], &[])));
        assert!(!filter(&[], &[], &["root"]).matches_event(&strangers, &ids), "nothing known: no match");
        assert!(Filter::default().matches_event(&strangers, &ids));
    }

    #[test]
    fn table_rows_match_on_either_ends_holders() {
        let sock = |inode, peer| crate::model::Socket::sample(inode, KernelState::Established, Some(peer));
        let holder = |pid| [crate::follow::Holder { pid, comm: "x".into(), fd: Some(3) }].into_iter().collect();
        let holders = [(10, holder(1)), (11, holder(2))].into_iter().collect();
        let mut model = Model::new(vec![sock(10, 11), sock(11, 10)], holders);
        *model.processes_mut() = two_processes();
        let f = Filter { users: vec!["alice".into()], ..Filter::default() };
        assert!(f.matches(&model, 11, Some(10)));
        let f = Filter { units: vec![Glob::new("nope*").unwrap()], ..Filter::default() };
        assert!(!f.matches(&model, 11, Some(10)));
    }

    #[test]
    fn long_comms_match_their_truncation() {
        assert!(comm_eq("systemd-journald-x", b"systemd-journal"));
        assert!(!comm_eq("systemd", b"systemd-journal"));
    }
}
