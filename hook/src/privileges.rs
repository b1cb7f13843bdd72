//! What the hook needs of its own process before it starts an injection: capabilities, read
//! with `caps`, so that a hook run without them says which one is missing instead of failing
//! later with a bare EPERM.

use caps::{CapSet, Capability};

use crate::error::{Error, Result};

/// The capabilities an injection into a container needs, with what each is for.
pub const INJECT: &[(Capability, &str)] = &[
    (
        Capability::CAP_SYS_ADMIN,
        "mounting ChaosFS and entering the container's namespaces",
    ),
    (
        Capability::CAP_SYS_CHROOT,
        "entering the container's mount namespace",
    ),
];

/// Ok when this process has every capability of `needed` in its effective set; else the
/// first missing one, named.
pub fn require(needed: &[(Capability, &'static str)]) -> Result<()> {
    for &(cap, why) in needed {
        let has = caps::has_cap(None, CapSet::Effective, cap).map_err(Error::Capabilities)?;
        if !has {
            return Err(Error::MissingCapability { cap, why });
        }
    }
    Ok(())
}
