"""A static musl binary in an empty image."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("rust:1.79-alpine")
    .run("apk add --no-cache musl-dev")
    .workdir("/usr/src/ferris")
    .copy(src.select("Cargo.toml", "Cargo.lock"), "./")
    .copy(src.dir("src"), "./src")
    .run(
        "cargo build --release --target x86_64-unknown-linux-musl",
        mounts=[dsl.cache("/usr/local/cargo/registry")],
    )
)
ferris = (
    dsl.scratch()
    .copy(build.path("/usr/src/ferris/target/x86_64-unknown-linux-musl/release/ferris"), "/ferris")
    .entrypoint(["/ferris"])
)
