//! The few protobuf fields of the task API the shim reads or writes itself. Everything else is
//! forwarded as bytes, never decoded, so runc's shim sees exactly what containerd sent.
//!
//! Field numbers are those of containerd's `runtime/v2/task/shim.proto` (task API v2, the same
//! in v3): `CreateTaskRequest { id = 1; bundle = 2 }`, `CreateTaskResponse { pid = 1 }`,
//! `DeleteRequest { id = 1; exec_id = 2 }`, `ShutdownRequest { id = 1; now = 2 }`,
//! `ConnectRequest { id = 1 }`, `ConnectResponse { shim_pid = 1; task_pid = 2 }`.

use protobuf::rt::WireType;
use protobuf::{CodedInputStream, CodedOutputStream};

use crate::error::{Error, Result};

/// A field's value, as far as the shim cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Varint(u64),
    Bytes(Vec<u8>),
}

/// The top-level fields of a message, in wire order (fixed-width fields are skipped).
pub fn fields(payload: &[u8]) -> Result<Vec<(u32, Value)>> {
    let bad = |e: protobuf::Error| Error::Wire(e.to_string());
    let mut is = CodedInputStream::from_bytes(payload);
    let mut out = Vec::new();
    while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
        let (field, wt) = (tag >> 3, tag & 7);
        match WireType::new(wt) {
            Some(WireType::Varint) => {
                out.push((field, Value::Varint(is.read_raw_varint64().map_err(bad)?)))
            }
            Some(WireType::LengthDelimited) => {
                out.push((field, Value::Bytes(is.read_bytes().map_err(bad)?)))
            }
            Some(w) => is.skip_field(w).map_err(bad)?,
            None => return Err(Error::Wire(format!("wire type {wt} of field {field}"))),
        }
    }
    Ok(out)
}

/// The last string value of field `n` ("" when absent, as protobuf's default).
pub fn string(payload: &[u8], n: u32) -> Result<String> {
    let mut s = String::new();
    for (f, v) in fields(payload)? {
        if let (true, Value::Bytes(b)) = (f == n, v) {
            s = String::from_utf8(b).map_err(|e| Error::Wire(e.to_string()))?;
        }
    }
    Ok(s)
}

/// The last varint value of field `n` (0 when absent).
pub fn varint(payload: &[u8], n: u32) -> Result<u64> {
    let mut x = 0;
    for (f, v) in fields(payload)? {
        if let (true, Value::Varint(v)) = (f == n, v) {
            x = v;
        }
    }
    Ok(x)
}

/// A message of string fields (`(number, value)`, empty values left out as proto3 does).
pub fn encode_strings(fields: &[(u32, &str)]) -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut buf);
        for (n, s) in fields {
            if !s.is_empty() {
                // Writing into a Vec cannot fail.
                let _ = os.write_string(*n, s);
            }
        }
        let _ = os.flush();
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_skips_the_rest() {
        let mut buf = encode_strings(&[(1, "c1"), (2, "/run/b"), (5, "")]);
        {
            let mut os = CodedOutputStream::vec(&mut buf);
            os.write_bool(4, true).expect("bool");
            os.write_fixed64(6, 7).expect("fixed");
            os.write_uint32(7, 300).expect("u32");
            os.flush().expect("flush");
        }
        assert_eq!(string(&buf, 1).expect("id"), "c1");
        assert_eq!(string(&buf, 2).expect("bundle"), "/run/b");
        assert_eq!(string(&buf, 5).expect("absent"), "");
        assert_eq!(varint(&buf, 4).expect("bool"), 1);
        assert_eq!(varint(&buf, 7).expect("u32"), 300);
        assert!(fields(&[0xff]).is_err());
    }
}
