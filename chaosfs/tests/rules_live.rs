//! Rules on a live mount: counters, replacing rules while mounted, and a request sleeping in a
//! latency fault not holding up others. Needs root and /dev/fuse (fails without them).

mod rules_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chaosfs::rules::RuleStats;
use rules_support::*;

#[test]
fn counters_count_matches_and_injections() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "glob": "f", "every": 2, "errno": "EIO"},
                      {"ops": ["read"], "glob": "g", "errno": "EIO"}]}"#,
        &[("f", b"x"), ("g", b"x")],
    );
    pread_many(&m.path("f"), 1, 10);
    assert_eq!(
        m.stats(),
        [
            RuleStats {
                matched: 10,
                injected: 5
            },
            RuleStats {
                matched: 0,
                injected: 0
            }
        ]
    );
}

#[test]
fn rules_can_be_replaced_while_mounted() {
    let m = Mount::new(r#"{"rules": []}"#, &[("f", b"data")]);
    assert_eq!(pread(&m.path("f"), 4).expect("no rules"), b"data");
    m.update(r#"{"rules": [{"ops": ["read"], "errno": "EIO"}]}"#);
    assert_eq!(errno(pread(&m.path("f"), 4)), Some(libc::EIO));
    assert_eq!(
        m.stats(),
        [RuleStats {
            matched: 1,
            injected: 1
        }]
    );
    m.update(r#"{"rules": [{"ops": ["open"], "errno": "EACCES"}]}"#);
    assert_eq!(errno(pread(&m.path("f"), 4)), Some(libc::EACCES));
    m.update(r#"{"rules": []}"#);
    assert_eq!(pread(&m.path("f"), 4).expect("rules removed"), b"data");
    assert!(m.stats().is_empty());
}

#[test]
fn a_delayed_request_does_not_hold_up_others() {
    let m = Arc::new(Mount::new(
        r#"{"rules": [{"ops": ["read"], "glob": "slow", "latency": "3s"}]}"#,
        &[("slow", b"s"), ("fast", b"f")],
    ));
    let done = Arc::new(AtomicBool::new(false));
    let slow = {
        let (m, done) = (m.clone(), done.clone());
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = pread(&m.path("slow"), 1);
            done.store(true, Ordering::SeqCst);
            (r.ok(), t.elapsed())
        })
    };
    // Wait until the slow read is parked in its delay.
    wait_for("the slow read to reach the rule", || {
        m.stats().first().is_some_and(|s| s.injected == 1)
    });
    for _ in 0..20 {
        assert_eq!(pread(&m.path("fast"), 1).expect("fast read"), b"f");
    }
    std::fs::metadata(m.path("fast")).expect("stat while a read sleeps");
    assert!(
        !done.load(Ordering::SeqCst),
        "20 reads and a stat finished while the delayed read was still sleeping"
    );
    let (r, took) = slow.join().expect("slow thread");
    assert_eq!(r.as_deref(), Some(&b"s"[..]));
    assert!(took >= Duration::from_secs(3), "slow read took {took:?}");
}

#[test]
fn update_serves_requests_parked_under_the_old_rules() {
    let m = Mount::new(
        r#"{"rules": [{"ops": ["read"], "latency": "1h"}]}"#,
        &[("a", b"aa"), ("b", b"bb")],
    );
    let (tx, rx) = std::sync::mpsc::channel();
    // The readers hold paths, not the mount: if the test fails, dropping `m` unmounts (and
    // serves the parked reads) rather than leaving a mount behind.
    let readers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (path, tx) = (m.path(name), tx.clone());
            std::thread::spawn(move || {
                let r = pread(&path, 2);
                let _ = tx.send((name, r.ok()));
            })
        })
        .collect();
    wait_for("both reads to park in the latency", || {
        m.pending_delays() == 2
    });
    m.update(r#"{"rules": [{"ops": ["write"], "errno": "EIO"}]}"#);
    let mut got: Vec<_> = (0..2)
        .map(|_| {
            // Without the fix they would sleep for the hour: fail instead of hanging.
            rx.recv_timeout(Duration::from_secs(60))
                .expect("a read parked under the old rules was not served after update")
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("a", Some(b"aa".to_vec())), ("b", Some(b"bb".to_vec()))]
    );
    for r in readers {
        r.join().expect("reader thread");
    }
}
