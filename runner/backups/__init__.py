"""Backups of every user's SQLite databases, and whole-set restores, done as root, safely.

The modules, one job each:

* `trees`: the no-follow handles (a user's `userdata/`, their backup dir), the names and
  patterns every other module validates against, and the small file operations on them;
* `tools`: the child processes (`sqlite3`, `dd`, `mv`) that run as the files' owner;
* `take`: taking a verified online backup (free space by page count x page size);
* `catalogue`: backup names, manifests, retention, and finding / copying out / discarding a backup;
* `restore`: putting a backup set back, and setting aside a database that has none.

Root discipline. Everything under `<home>/.t3/userdata/` and `<backup_root>/<user>/` is
controlled by that user, so:

* root opens those trees with no-follow, directory-relative descriptors (`runner.userfiles`)
  below a trusted, root-owned parent; a symlinked home, `.t3`, `userdata`, backup dir or
  database is refused, never followed; the owner is whoever owns the home directory;
* every file in a user's `userdata/` is created, copied and renamed by a child process
  running as that owner (`proc.run(..., as_user=owner)`): `sqlite3` for the online copy and
  the checks, `dd` for the byte copy of a restore, `mv` for renames (rename(2) replaces a
  symlink, never writes through it): a home may sit on a filesystem that refuses root. The
  `sqlite3` child also gets `-nofollow`, which refuses a symlink anywhere in the paths it is
  given (they are canonical);
* in a backup dir the copies are made the same way (the owner's `sqlite3` reads the live
  database and writes the copy), but root writes the manifest (exclusive, no-follow create by
  the dir's descriptor, then fchown to the owner) and renames the verified copy by the dir's
  descriptor: that dir is one root made below the operator's trusted backup root, and two
  process start-ups per database were most of a small backup's time;
* root itself otherwise only reads, fstats, fchmods/fchowns, fsyncs through descriptors, and
  makes directories or unlinks entries relative to a directory descriptor; after each rename
  it checks that the final name is the very inode it verified.
"""
