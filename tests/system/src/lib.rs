//! No library: the tests under `tests/` start a pbx-node and an SBC and
//! drive real phones (sipp) through them.
