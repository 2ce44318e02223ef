"""cargo-chef: dependencies cooked from a recipe, so a code change rebuilds only the crate."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

chef = dsl.image("rust:1.79-slim").run("cargo install cargo-chef --locked").workdir("/app")
planner = chef.copy(src, ".").run("cargo chef prepare --recipe-path recipe.json")
builder = (
    chef.copy(planner.path("/app/recipe.json"), "recipe.json")
    .run("cargo chef cook --release --recipe-path recipe.json")
    .copy(src, ".")
    .run("cargo build --release --bin ferris")
)
runtime = (
    dsl.image("debian:bookworm-slim")
    .workdir("/app")
    .copy(builder.path("/app/target/release/ferris"), "/usr/local/bin/ferris")
    .entrypoint(["/usr/local/bin/ferris"])
)
