// sqlx::migrate! embeds migrations/ at compile time, but cargo does not know it reads that
// directory: without this a new migration file would not rebuild the binary (the build
// script sqlx's own docs give for it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
