"""Composer's binary copied straight out of its image."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)
composer = dsl.image("composer:2")

app = (
    dsl.image("php:8.3-fpm-alpine")
    .copy(composer.path("/usr/bin/composer"), "/usr/bin/composer")
    .workdir("/var/www/html")
    .copy(src.select("composer.json", "composer.lock"), "./")
    .run("composer install --no-dev --no-scripts --prefer-dist")
    .copy(src, ".")
    .run("chown -R www-data:www-data /var/www/html || true")
)
