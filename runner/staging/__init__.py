"""Phase 4, stage: a candidate installed into its own release directory, never over a live one.

* `checks`: the npm and `t3 --version` command lines, and the checks of what they produce
  (the tarball's and the installed package.json, the reported version);
* `releases`: release directories (the record, verification, atomic replacement, removal);
* `npmcache`: the tarball an install fetched, taken from npm's cache;
* `flow`: staging as the gate user, and reinstalling a release from its kept tarball (offline:
  a rollback needs no network).

Layout of one release, `<releases_dir>/<version>/`:

    bin/t3                      npm's bin link (relative: ../lib/node_modules/t3/bin/t3)
    lib/node_modules/<pkg>/     the installed package
    <tarball>.tgz               the exact bytes npm fetched and installed, for an offline rollback
    release.json                version, package, tarball name, sha512 (SRI form), staged_at
"""
