//! `/proc/PID/maps`.

use std::path::PathBuf;

use crate::error::{Error, Result, io_err};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxs`/`rwxp`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Device `major:minor` (hex in the file).
    pub dev: (u32, u32),
    /// Inode.
    pub ino: u64,
    /// Path text (may end in ` (deleted)`), empty for anonymous mappings.
    pub path: String,
}

impl MapLine {
    /// Shared (`s`) rather than private (`p`).
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
}

/// Parse `maps` text; `None` if a line has not the kernel's shape.
///
/// ```
/// let t = "7f00-7f10 rw-s 00001000 00:2e 12     /data/x (deleted)\n7f10-7f20 r--p 00000000 00:00 0 \n";
/// let m = procinfo::parse_maps(t).expect("parses");
/// assert!(m[0].shared());
/// assert_eq!(m[0].offset, 0x1000);
/// assert_eq!(m[0].path, "/data/x (deleted)");
/// assert_eq!(m[1].path, "");
/// assert!(procinfo::parse_maps("7f00 rw-s 0 00:2e 12\n").is_none());
/// ```
pub fn parse_maps(text: &str) -> Option<Vec<MapLine>> {
    text.lines().map(parse_map_line).collect()
}

fn parse_map_line(line: &str) -> Option<MapLine> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = it.next()?;
    let dev = it.next()?;
    let ino = it.next()?;
    let path = it.next().unwrap_or("").trim_start();
    let (s, e) = range.split_once('-')?;
    let (ma, mi) = dev.split_once(':')?;
    Some(MapLine {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms: perms.to_owned(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: (
            u32::from_str_radix(ma, 16).ok()?,
            u32::from_str_radix(mi, 16).ok()?,
        ),
        ino: ino.parse().ok()?,
        path: path.to_owned(),
    })
}

/// Read `/proc/PID/maps` (`pid`: a `pid_t`).
pub fn maps(pid: i32) -> Result<Vec<MapLine>> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    parse_maps(&text).ok_or(Error::Format {
        path,
        detail: String::new(),
    })
}
