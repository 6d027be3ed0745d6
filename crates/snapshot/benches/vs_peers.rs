//! Benchmark of `snapshot` against its peers (issue #5); filled in by a later commit.

fn main() {}
