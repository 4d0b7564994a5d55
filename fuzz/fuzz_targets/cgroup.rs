//! Fuzzes where environments' control groups go: `Cgroups::detect_in` over the text of
//! `/proc/self/mountinfo` and `/proc/self/cgroup`, with each `[local] cgroup` setting.
//!
//! The input is split at its first two NUL bytes: the mountinfo text, the engine's own
//! `cgroup` file, and the setting (`auto`, `off`, a group path). For each input:
//! 1. Reading the setting and detecting the groups do not panic.
//! 2. Every directory detection gives (the base of each hierarchy) is absolute and names no
//!    parent (`..`): the groups Slipway makes and writes limits into stay beneath a cgroup
//!    mount.
//! 3. Each environment's group is a child of a base, named for its uid.

#![no_main]

use std::path::Component;

use libfuzzer_sys::fuzz_target;
use slipway_providers::cgroup::{Cgroups, Setting};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let mountinfo = parts.next().unwrap_or("");
    let own = parts.next().unwrap_or("");
    let setting = parts.next().unwrap_or("auto");
    let Ok(setting) = Setting::parse(setting) else {
        return;
    };
    let Ok(found) = Cgroups::detect_in(&setting, mountinfo, own) else {
        return;
    };
    let bases = found.base_dirs();
    for dir in &bases {
        assert!(dir.is_absolute(), "{} is not absolute", dir.display());
        assert!(
            !dir.components().any(|c| matches!(c, Component::ParentDir)),
            "{} names a parent",
            dir.display()
        );
    }
    let group = found.for_uid(200_001, Some(64 << 20), Some(500));
    for dir in group.dirs() {
        assert!(
            dir.file_name() == Some(std::ffi::OsStr::new("200001"))
                && dir.parent().is_some_and(|parent| bases.contains(&parent)),
            "{} is not a base's child",
            dir.display()
        );
    }
});
