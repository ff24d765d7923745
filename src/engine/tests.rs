//! Engine tests with paused time: see the functions below.
