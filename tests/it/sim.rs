//! The simulator on its own: the wire contract, its refusals, the state machine, fault injection.
