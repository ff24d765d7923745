//! The client against the simulator, on loopback: every status and every fault kind.
