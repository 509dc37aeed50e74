//! End-to-end tests of the snapshot: the real unixtrace binary against a
//! real workload, checked against the workload's own record, `ss -xap` and
//! `lsof +E -U`. They run as root (CI does) and fail otherwise.
//!
//! unixtrace is found by `unixpeer_tests::tools::unixtrace_bin()`: build it
//! first with `cargo build -p unixpeer-user`, or set UNIXTRACE_BIN.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use unixpeer_tests::tools::*;

const SOCKFARM: &str = env!("CARGO_BIN_EXE_sockfarm");

/// A scratch directory for socket paths, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/unixtrace-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Unprivileged workloads bind sockets here too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn tag(&self) -> String {
        self.0.file_name().unwrap().to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A workload with every corner case once, plus `procs` processes of
/// `per_proc` ordinary sockets each.
fn farm_with_scenarios(dir: &Scratch, procs: &str, per_proc: &str) -> Farm {
    let tag = dir.tag();
    let args = ["--procs", procs, "--per-proc", per_proc, "--scenarios", "--dir", dir.path(), "--tag", &tag];
    Farm::start(sockfarm(SOCKFARM, &args), "READY")
}

/// As root, a scratch directory `name` and the scenario workload in it
/// (bound in that order, so the farm is dropped first).
fn scenarios(name: &str) -> (Scratch, Farm) {
    require_root();
    let dir = Scratch::new(name);
    let farm = farm_with_scenarios(&dir, "1", "20");
    (dir, farm)
}

fn unixtrace_json(args: &[&str]) -> HashMap<u64, Value> {
    parse_json(&run_ok(Command::new(unixtrace_bin()).arg("--json").args(args)))
}

fn unixtrace_table(args: &[&str]) -> String {
    run_ok(Command::new(unixtrace_bin()).args(args).env_remove("COLUMNS"))
}

fn one(farm: &Farm, label: &str) -> u64 {
    let found = inodes(farm, label);
    assert_eq!(found.len(), 1, "expected one {label} socket, got {found:?}");
    *found.first().unwrap()
}

fn inodes(farm: &Farm, label: &str) -> BTreeSet<u64> {
    farm.labelled(label).iter().map(|s| s.inode).collect()
}

/// The line of `table` that shows socket `inode`.
/// The table's row whose INODE column (the third) is `inode`: a guest's
/// small inode numbers are often the start of another's (1137, 11372).
fn row(table: &str, inode: u64) -> &str {
    let inode_text = inode.to_string();
    table
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(inode_text.as_str()))
        .unwrap_or_else(|| panic!("no row for {inode}:\n{table}"))
}

#[test]
fn ten_thousand_sockets_agree_with_ss_and_lsof() {
    require_root();
    let dir = Scratch::new("big");
    let farm = farm_with_scenarios(&dir, "3", "3400");
    let expected = farm.holders();
    let expected_peers = farm.peers();
    assert!(expected.len() >= 10_000, "workload has only {} sockets", expected.len());
    let pids: BTreeSet<u32> = farm.sockets.iter().map(|s| s.pid).collect();
    assert!(pids.len() >= 4, "workload spans only {} processes", pids.len());

    let ss = parse_ss(&run_ok(Command::new("ss").arg("-xap")));
    let lsof = parse_lsof(&run_ok(Command::new("lsof").args(["+E", "-U", "-F", "pfinT"])));
    let ut = unixtrace_json(&[]);

    let mut wrong = Vec::new();
    for (&inode, want) in &expected {
        let Some(v) = ut.get(&inode) else {
            wrong.push(format!("{inode}: missing from unixtrace"));
            continue;
        };
        let got = json_seen(v);
        if &got.holders != want {
            wrong.push(format!("{inode}: unixtrace holders {:?}, workload {want:?}", got.holders));
        }
        match ss.get(&inode) {
            Some(s) if s.holders == got.holders && s.peer == got.peer => {}
            other => wrong.push(format!("{inode}: unixtrace {got:?}, ss {other:?}")),
        }
        // lsof names an endpoint for a datagram server too: one of the
        // clients that connect()ed to it, whose peer is the server.
        let points_back = |p: u64| ut.get(&p).and_then(|v| v["peer_inode"].as_u64()) == Some(inode);
        match lsof.get(&inode) {
            Some(l)
                if l.holders == got.holders
                    && (l.peer.is_none() || l.peer == got.peer || l.peer.is_some_and(points_back)) => {}
            other => wrong.push(format!("{inode}: unixtrace {got:?}, lsof {other:?}")),
        }
        if let Some(&peer) = expected_peers.get(&inode) {
            if got.peer != Some(peer) {
                wrong.push(format!("{inode}: unixtrace peer {:?}, workload {peer}", got.peer));
            }
            let peer_holders = json_holders(&v["peer_holders"]);
            if Some(&peer_holders) != expected.get(&peer) {
                wrong.push(format!("{inode}: peer_holders {peer_holders:?}, workload {:?}", expected.get(&peer)));
            }
        }
        for h in v["holders"].as_array().unwrap() {
            let comm = h["comm"].as_str().unwrap();
            if comm != "sockfarm" && comm != "sockfarm-child" {
                wrong.push(format!("{inode}: comm {comm:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} disagreements, first ones:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );

    // The corner cases, as a user reads them.
    let forked = one_of(&farm, "forked");
    assert_eq!(json_holders(&ut[&forked]["holders"]).len(), 2, "fork-shared socket lists both processes");
    let received = one(&farm, "scm-received");
    let child = farm.labelled("scm-received")[0].pid;
    assert_eq!(json_holders(&ut[&received]["holders"]).iter().map(|h| h.0).collect::<Vec<_>>(), vec![child]);
    assert_eq!(ut[&received]["holders"][0]["comm"], "sockfarm-child");
}

fn one_of(farm: &Farm, label: &str) -> u64 {
    *inodes(farm, label).first().unwrap_or_else(|| panic!("no {label} socket"))
}

#[test]
fn abstract_names_show_with_an_at_sign() {
    let (dir, farm) = scenarios("abstract");
    let listener = one(&farm, "abstract-listener");
    let name = format!("@{}-scenario", dir.tag());
    let ut = unixtrace_json(&[]);
    assert_eq!(ut[&listener]["path"], name.as_str());
    assert_eq!(ut[&listener]["type"], "stream");
    let table = unixtrace_table(&["--path", "@*"]);
    let row = row(&table, listener);
    assert!(row.contains(&name) && row.contains("listening"), "{row}");
    // The accepted connection is named after the listener on its one row.
    let conn = inodes(&farm, "abstract-conn");
    let row = table.lines().find(|l| conn.iter().all(|i| l.contains(&i.to_string()))).expect("one row per pair");
    assert!(row.contains(&name), "{row}");
}

#[test]
fn listeners_show_their_accept_queue() {
    let (_dir, farm) = scenarios("pending");
    let listener = one(&farm, "pending-listener");
    let clients = inodes(&farm, "pending-client");
    let ut = unixtrace_json(&["--listening"]);
    let l = &ut[&listener];
    assert_eq!(l["state"], "listening");
    assert_eq!(l["backlog"], 16);
    let pending: BTreeSet<u64> = l["pending"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(pending, clients);
    assert!(ut.values().all(|v| v["state"] == "listening"), "--listening shows only listeners");

    let all = unixtrace_json(&[]);
    for c in &clients {
        assert_eq!(all[c]["state"], "pending");
        assert_eq!(all[c]["listener"], listener);
    }
    let table = unixtrace_table(&[]);
    let row = row(&table, listener);
    assert!(row.contains("3/16 waiting"), "{row}");
}

#[test]
fn half_closed_sockets_stand_out() {
    let (_dir, farm) = scenarios("half");
    let half = one(&farm, "half-closed");
    let ut = unixtrace_json(&[]);
    assert_eq!(ut[&half]["state"], "peer-closed");
    assert_eq!(ut[&half]["peer_inode"], Value::Null);
    assert_eq!(ut[&half]["shutdown"], 3);
    assert_eq!(ut[&one(&farm, "unconnected")]["state"], "unconnected");
    let table = unixtrace_table(&[]);
    let row = row(&table, half);
    assert!(row.contains("peer-closed") && row.contains("gone"), "{row}");
}

#[test]
fn pid_filter_matches_either_end() {
    let (_dir, farm) = scenarios("pid");
    // The passed socket lives in the child, its peer stays in the parent.
    let received = farm.labelled("scm-received")[0];
    let kept = farm.labelled("scm-kept")[0];
    assert_ne!(received.pid, kept.pid);
    let ut = unixtrace_json(&["--pid", &received.pid.to_string()]);
    assert!(ut.contains_key(&received.inode));
    assert!(ut.contains_key(&kept.inode), "the peer held only by the other process matches too");
    assert!(!ut.contains_key(&one(&farm, "half-closed")), "unrelated sockets are filtered out");
    let table = unixtrace_table(&["--pid", &kept.pid.to_string()]);
    let row = row(&table, received.inode);
    assert!(row.contains(&format!("[{}]:{}", received.pid, received.fd)), "{row}");
    assert!(row.contains(&format!("[{}]:{}", kept.pid, kept.fd)), "{row}");
}

#[test]
fn all_netns_joins_a_container_client_to_a_host_server() {
    require_root();
    let dir = Scratch::new("netns");
    let path = format!("{}/host.sock", dir.path());
    let mut server = Farm::start(sockfarm(SOCKFARM, &["--serve", &path]), "LISTENING");
    let mut client_cmd = Command::new("unshare");
    client_cmd.args(["-n", SOCKFARM, "--connect", &path]);
    let client = Farm::start(client_cmd, "READY");
    server.read_until("READY");
    let c = &client.labelled("connect-client")[0];
    let accepted = &server.labelled("serve-accepted")[0];
    let host_ns = netns_of("self");
    let client_ns = netns_of(&c.pid.to_string());
    assert_ne!(host_ns, client_ns, "unshare -n gave the client its own netns");

    // The accepted end lives in the client's netns: invisible from here alone.
    let here = unixtrace_json(&[]);
    assert!(!here.contains_key(&accepted.inode));
    assert!(here.contains_key(&server.labelled("serve-listener")[0].inode));

    let all = unixtrace_json(&["--all-netns"]);
    let v = &all[&c.inode];
    assert_eq!(v["peer_inode"], accepted.inode);
    assert_eq!(json_holders(&v["holders"]), [(c.pid, c.fd)].into_iter().collect());
    assert_eq!(json_holders(&v["peer_holders"]), [(accepted.pid, accepted.fd)].into_iter().collect());
    assert_eq!(v["peer_path"], path.as_str());
    assert_eq!(v["netns"], client_ns);
    assert_eq!(all[&accepted.inode]["netns"], client_ns);

    let table = unixtrace_table(&["--all-netns"]);
    let row = row(&table, c.inode);
    for needle in [accepted.inode.to_string(), path.clone(), client_ns.to_string(), format!("[{}]", accepted.pid)] {
        assert!(row.contains(&needle), "{needle} missing from {row}");
    }
}

fn netns_of(pid: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap().ino()
}

#[test]
fn unprivileged_run_lists_everything_and_warns_once() {
    let (dir, root_farm) = scenarios("nobody");
    let bin_dir = dir.0.join("bin");
    let farm_bin = copy_for_everyone(std::path::Path::new(SOCKFARM), &bin_dir);
    let ut_bin = copy_for_everyone(&unixtrace_bin(), &bin_dir);
    // As nobody, without supplementary groups (std drops them when root
    // sets a uid); no setpriv needed, so this runs in the VM guests too.
    let nobody = |bin: &std::path::Path| {
        let mut c = Command::new(bin);
        c.uid(65534).gid(65534);
        c
    };
    let tag = format!("{}-nobody", dir.tag());
    let mut cmd = nobody(&farm_bin);
    cmd.args(["--procs", "1", "--per-proc", "10", "--dir", dir.path(), "--tag", &tag]);
    let own_farm = Farm::start(cmd, "READY");

    let out = run(nobody(&ut_bin).arg("--json"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one warning line, got {lines:?}");
    assert!(lines[0].contains("could not read fds of") && lines[0].contains("run as root"), "{}", lines[0]);

    let ut = parse_json(&String::from_utf8(out.stdout).unwrap());
    for s in &root_farm.sockets {
        let v = ut.get(&s.inode).unwrap_or_else(|| panic!("root's socket {} is listed", s.inode));
        assert!(json_holders(&v["holders"]).is_empty(), "root's holders are not visible to nobody");
    }
    for s in &own_farm.sockets {
        let held = json_holders(&ut[&s.inode]["holders"]);
        assert!(held.contains(&(s.pid, s.fd)), "nobody's own socket {} is attributed", s.inode);
    }
}

#[test]
fn usage_errors_exit_with_2() {
    let bin = unixtrace_bin();
    for args in [&["--no-such-flag"][..], &["--path", "[unclosed"], &["--type", "raw"]] {
        let out = run(Command::new(&bin).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_socket_held_by_ten_processes_shows_the_first_and_a_count() {
    use unixpeer_tests::tracer::{Gate, fork_child, inode_of, socketpair, wait_child};
    require_root();
    let pair = socketpair(libc::SOCK_STREAM);
    let (a, b) = (inode_of(pair[0]), inode_of(pair[1]));
    let gate = Gate::new();
    let children: Vec<i32> = (0..10)
        .map(|_| {
            fork_child("ten-holders", || {
                gate.wait();
                0
            })
        })
        .collect();
    // SAFETY: the children have their own copies; this process lets go of its own.
    unsafe {
        libc::close(pair[0]);
        libc::close(pair[1]);
    }
    let table = unixtrace_table(&["--comm", "ten-holders"]);
    let wide = unixtrace_table(&["--comm", "ten-holders", "--wide"]);
    let json = unixtrace_json(&["--comm", "ten-holders"]);
    // Every child waits on the same pipe: closing it lets them all go.
    drop(gate);
    for c in children.iter().copied() {
        assert_eq!(wait_child(c), 0);
    }
    let first = children.iter().min().expect("children");
    let row = |t: &str| t.lines().find(|l| l.contains(&a.to_string()) || l.contains(&b.to_string())).map(str::to_owned);
    let row = row(&table).unwrap_or_else(|| panic!("no row for the pair:\n{table}"));
    // Both columns: the first holder by pid and how many more.
    assert_eq!(row.matches(&format!("ten-holders[{first}]:")).count(), 2, "{row}");
    assert_eq!(row.matches(" +9").count(), 2, "{row}");
    assert_eq!(row.matches("ten-holders[").count(), 2, "one holder per column: {row}");
    let wide_row = wide.lines().find(|l| l.contains(&a.to_string()) || l.contains(&b.to_string()));
    let wide_row = wide_row.unwrap_or_else(|| panic!("no row for the pair:\n{wide}"));
    assert_eq!(wide_row.matches("ten-holders[").count(), 20, "--wide lists all ten on both ends: {wide_row}");
    for inode in [a, b] {
        let holders = json[&inode]["holders"].as_array().unwrap_or_else(|| panic!("{}", json[&inode]));
        assert_eq!(holders.len(), 10, "JSON lists every holder: {holders:?}");
        let mut pids: Vec<i64> = holders.iter().map(|h| h["pid"].as_i64().expect("pid")).collect();
        pids.sort_unstable();
        let mut want: Vec<i64> = children.iter().map(|&c| i64::from(c)).collect();
        want.sort_unstable();
        assert_eq!(pids, want);
    }
}
