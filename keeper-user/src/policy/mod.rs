//! The YAML policy (placeholder until the policy issue lands).
