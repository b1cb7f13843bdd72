//! `--json` of inject, status, update and recover against the one schema of the docs
//! (docs/schema/iochaos.schema.json), validated on real output from a real injection; and the
//! human `status` output: aligned columns on a terminal, the plain form in a pipe. Privileged
//! (root, FUSE, ptrace): fails without them.

mod inject_common;

use std::process::Command;

use inject_common::{EIO_ON_WRITE, Env, Workload, inject_args};
use serde_json::Value;

/// A validator for `$defs/WHAT` of the project's schema.
fn validator(what: &str) -> jsonschema::Validator {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schema/iochaos.schema.json"
    );
    let mut schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the schema")).expect("JSON");
    assert!(
        jsonschema::meta::is_valid(&schema),
        "the schema is not a valid JSON Schema"
    );
    schema["$ref"] = Value::String(format!("#/$defs/{what}"));
    jsonschema::validator_for(&schema).expect("compiling the schema")
}

fn assert_valid(what: &str, doc: &Value) {
    let v = validator(what);
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\nin {doc:#}");
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn json_output_follows_the_documented_schema() {
    let env = Env::new();
    let w = Workload::start(&env, "w");
    let pid = w.pid_arg();
    let mut args = inject_args(&["--pid", &pid], w.vol_str(), EIO_ON_WRITE);
    args.push("--json");
    let injected = json(&env.ok(&args));
    assert_valid("injection", &injected);
    // The fields inject --json lacked: the server's state, and the path in the spec (as the
    // hook's and the shim's injections have it).
    assert_eq!(injected["server"], "running", "{injected:#}");
    assert_eq!(injected["spec"]["path"], w.vol_str(), "{injected:#}");
    let id = injected["id"].as_str().expect("id").to_owned();

    for args in [
        &["status", "--json"][..],
        &["--json", "status"],
        &["status", &id, "--json"],
    ] {
        let status = json(&env.ok(args));
        assert_valid("status", &status);
        assert_eq!(status[0]["id"], id.as_str(), "{args:?}");
        assert_eq!(status[0]["spec"]["path"], w.vol_str());
        // How the workload's new files were opened: before the stop, handed in.
        assert_eq!(
            status[0]["open_modes"],
            serde_json::json!([{"pid": w.pid(), "mode": "handoff"}]),
            "{status:#}"
        );
    }

    let updated = json(&env.ok(&["update", &id, "--latency", "1ms", "--ops", "read", "--json"]));
    assert_valid("injection", &updated);
    assert_eq!(updated["rules"][0]["spec"]["latency"], "1ms", "{updated:#}");
    assert_eq!(updated["spec"]["path"], w.vol_str(), "{updated:#}");

    // Human output: a pipe gets the plain form, a terminal the aligned table.
    let plain = env.ok(&["status"]);
    assert!(plain.starts_with(&format!("{id}  pid {pid}")), "{plain}");
    assert!(
        plain
            .lines()
            .any(|l| l == format!("  opened: pid {pid}: handoff")),
        "{plain}"
    );
    let tty = on_a_terminal(&env, "status");
    let lines: Vec<&str> = tty.lines().collect();
    let header = lines.first().copied().unwrap_or_default();
    let row = lines
        .iter()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no row for {id}: {tty}"));
    for (column, cell) in [
        ("TARGET", format!("pid {pid}")),
        ("PATH", w.vol_str().to_owned()),
    ] {
        let at = header
            .find(column)
            .unwrap_or_else(|| panic!("no {column}: {tty}"));
        assert_eq!(
            row.find(cell.as_str()),
            Some(at),
            "{column} not aligned:\n{tty}"
        );
    }

    let recovered = json(&env.ok(&["recover", &id, "--json"]));
    assert_valid("recover", &recovered);
    assert_eq!(recovered[0]["id"], id.as_str(), "{recovered:#}");
    assert_eq!(json(&env.ok(&["--json", "status"])), Value::Array(vec![]));
    env.assert_clean(&[], Some(w.pid()));
}

/// `iochaos ARGS` with stdout on a pseudo-terminal (util-linux `script`); what it printed.
fn on_a_terminal(env: &Env, args: &str) -> String {
    let exe = env!("CARGO_BIN_EXE_iochaos");
    let out = Command::new("script")
        .args(["-qec", &format!("{exe} {args}"), "/dev/null"])
        .env("IOCHAOS_RUN_DIR", &env.run)
        .output()
        .expect("script (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}
