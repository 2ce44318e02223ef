"""Bundler in deployment mode, gems installed before the code is copied."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

app = (
    dsl.image("ruby:3.3-slim")
    .env(
        BUNDLE_DEPLOYMENT="1", BUNDLE_WITHOUT="development test", BUNDLE_PATH="/usr/local/bundle"
    )
    .workdir("/rails")
    .copy(src.select("Gemfile", "Gemfile.lock"), "./")
    .run('bundle install && rm -rf ~/.bundle/ "${BUNDLE_PATH}"/ruby/*/cache')
    .copy(src, ".")
    .expose(9292)
    .cmd("bundle", "exec", "rackup", "--host", "0.0.0.0")
)
