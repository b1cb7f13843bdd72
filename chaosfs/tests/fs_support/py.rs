//! A python3 process driven line by line, for tests that need a second real process making
//! C-level calls (`fcntl` locks, SQLite, `name_to_handle_at` through ctypes).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A python3 process driven line by line: each command line is `exec`ed, then "ok" or the
/// exception's repr is printed.
pub struct Py {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

const DRIVER: &str = r#"
import ctypes, fcntl, os, sys, struct, sqlite3
for line in sys.stdin:
    try:
        exec(line)
        print("ok", flush=True)
    except Exception as e:
        print(repr(e), flush=True)
"#;

impl Py {
    pub fn start() -> Py {
        iochaos_testsupport::require_tools(&["python3"]);
        let mut child = Command::new("python3")
            .args(["-c", DRIVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Py { child, stdin, out }
    }

    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to python");
        self.stdin.flush().expect("flush");
    }

    pub fn answer(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("read from python");
        s.trim().to_owned()
    }

    /// Run one line, return "ok" or the error.
    pub fn run(&mut self, line: &str) -> String {
        self.send(line);
        self.answer()
    }

    pub fn ok(&mut self, line: &str) {
        assert_eq!(self.run(line), "ok", "{line}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.try_wait();
    }
}

/// `p` as a Python string literal.
pub fn py_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}
