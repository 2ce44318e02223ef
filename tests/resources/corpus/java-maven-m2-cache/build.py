"""A Maven build with ~/.m2 as a cache mount, run on a JRE."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)
m2 = dsl.cache("/root/.m2")

build = (
    dsl.image("maven:3.9-eclipse-temurin-21")
    .workdir("/build")
    .copy(src.file("pom.xml"), ".")
    .run("mvn -B dependency:go-offline", mounts=[m2])
    .copy(src.dir("src"), "./src")
    .run("mvn -B -DskipTests package", mounts=[m2])
)
app = (
    dsl.image("eclipse-temurin:21-jre")
    .run("useradd --system --uid 10001 spring")
    .workdir("/app")
    .copy(build.path("/build/target/app.jar"), "app.jar")
    .user(10001)
    .expose(8080)
    .entrypoint("java", "-jar", "/app/app.jar")
)
