//! Where the kernel holds each directory's name, for directories moved by another mount.
//!
//! The kernel keeps one dentry per directory inode. When another mount moved a directory
//! and a lookup here finds it at its new place, the kernel moves its old dentry there,
//! but only when it can take the locks that needs; inside a rename (which holds them
//! already) it cannot, and the rename fails with `ESTALE`. So a lookup that finds a
//! directory elsewhere than the kernel last saw it first asks the kernel to drop the old
//! name; when that cannot finish at once (its parent is locked, most likely by the very
//! operation that looks up), the directory is answered with a new generation: the kernel
//! then retires its old inode (operations through it fail with `EIO`, as on a directory
//! removed) and makes a fresh one, with no old dentry in the way. Pinned by
//! `tests/fs.rs`, `directories_moved_on_one_mount_can_be_renamed_on_the_other`.

use std::collections::HashMap;
use std::sync::Mutex;

/// Placements remembered; past this the book starts afresh (a forgotten placement only
/// costs the kernel a chance to move its old dentry itself).
const MAX_PLACEMENTS: usize = 100_000;

#[derive(Default)]
pub struct Placements {
    // Never held across an await: lookups and inserts only.
    inner: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Directory inode -> (parent inode, name) the kernel last got it under.
    at: HashMap<u64, (u64, String)>,
    /// Generations given out, for the few directories that needed a new one; never
    /// forgotten, since the kernel retires an inode whose generation changes.
    generations: HashMap<u64, u64>,
}

impl Placements {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.lock().expect("placements")
    }

    /// Records that the kernel now gets directory `ino` as `name` in `parent`; returns
    /// where it had it before, when that was elsewhere.
    pub fn place(&self, ino: u64, parent: u64, name: &str) -> Option<(u64, String)> {
        let mut b = self.book();
        if b.at.len() >= MAX_PLACEMENTS && !b.at.contains_key(&ino) {
            b.at.clear();
        }
        match b.at.insert(ino, (parent, name.to_string())) {
            Some(old) if old != (parent, name.to_string()) => Some(old),
            _ => None,
        }
    }

    /// A rename made through this mount: the kernel moved its dentry itself.
    pub fn moved(&self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let mut b = self.book();
        let moved: Vec<u64> =
            b.at.iter()
                .filter(|(_, (p, n))| *p == parent && n == name)
                .map(|(ino, _)| *ino)
                .collect();
        for ino in moved {
            b.at.insert(ino, (new_parent, new_name.to_string()));
        }
    }

    /// The generation of inode `ino` (0 unless it needed a new one).
    pub fn generation(&self, ino: u64) -> u64 {
        self.book().generations.get(&ino).copied().unwrap_or(0)
    }

    /// Gives `ino` a new generation and returns it.
    pub fn renew(&self, ino: u64) -> u64 {
        let mut b = self.book();
        let g = b.generations.entry(ino).or_insert(0);
        *g += 1;
        *g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_found_elsewhere_reports_its_old_place_once() {
        let p = Placements::default();
        assert_eq!(p.place(7, 1, "a"), None);
        assert_eq!(p.place(7, 1, "a"), None);
        assert_eq!(p.place(7, 3, "b"), Some((1, "a".to_string())));
        assert_eq!(p.place(7, 3, "b"), None);
        // Moved here: no old place to drop.
        p.moved(3, "b", 1, "c");
        assert_eq!(p.place(7, 1, "c"), None);
    }

    #[test]
    fn generations_start_at_zero_and_only_grow() {
        let p = Placements::default();
        assert_eq!(p.generation(9), 0);
        assert_eq!(p.renew(9), 1);
        assert_eq!(p.renew(9), 2);
        assert_eq!(p.generation(9), 2);
        assert_eq!(p.generation(10), 0);
    }
}
