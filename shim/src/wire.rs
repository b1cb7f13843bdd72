//! The few task-API messages the shim reads or writes itself, as `containerd-shim-protos`'
//! generated types. Everything else is forwarded as bytes, never decoded, so runc's shim sees
//! exactly what containerd sent (a decoded and re-encoded message could drop fields a newer
//! containerd adds).

pub use containerd_shim_protos::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    ShutdownRequest,
};
use containerd_shim_protos::protobuf::Message;

use crate::error::{Error, Result};

/// One message decoded from a request's or response's payload.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M> {
    M::parse_from_bytes(payload).map_err(|e| Error::Wire(format!("{}: {e}", M::NAME)))
}

/// A message's wire bytes.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>> {
    message
        .write_to_bytes()
        .map_err(|e| Error::Wire(format!("{}: {e}", M::NAME)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_gives_its_id_and_bundle_and_keeps_unknown_fields_out_of_the_way() {
        let mut req = CreateTaskRequest::new();
        req.id = "c1".into();
        req.bundle = "/run/b".into();
        req.terminal = true;
        let mut bytes = encode(&req).expect("encode");
        // A field this version does not know (number 1000, a string) is skipped, not an error.
        bytes.extend_from_slice(&[0xc2, 0x3e, 0x01, b'x']);
        let back: CreateTaskRequest = decode(&bytes).expect("decode");
        assert_eq!((back.id.as_str(), back.bundle.as_str()), ("c1", "/run/b"));
        assert!(back.terminal);
        let err = decode::<CreateTaskResponse>(&[0xff]).expect_err("garbage");
        assert!(err.to_string().contains("CreateTaskResponse"), "{err}");
    }
}
