#![no_std]
// The library target exists so keeper-user can declare a build-dependency on this crate and cargo
// rebuilds the embedded object when these sources change. The programs live in main.rs.
