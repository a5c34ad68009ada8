//! The pure decision engine (placeholder until the policy issue lands).
