"""Small standard-library helpers both processes use: `paths` (per-user locations), `privacy`
(private files, and paths another user could have written), `safetext` (text safe on one
terminal or log line), `digest` (SHA-256), `record` (the immutable records a shell defines),
`sqlite_files` (an SQLite database in WAL mode that processes share: whether a file is one yet,
and the directory lock under which one is made)."""
