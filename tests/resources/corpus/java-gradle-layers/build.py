"""A Spring Boot jar split into layers, least-changing first."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("gradle:8.8-jdk21")
    .workdir("/home/gradle/project")
    .copy(src, ".", chown="gradle:gradle")
    .run("gradle bootJar --no-daemon")
)
extract = (
    dsl.image("eclipse-temurin:21-jre")
    .workdir("/layers")
    .copy(build.path("/home/gradle/project/build/libs/app.jar"), "app.jar")
    .run("java -Djarmode=layertools -jar app.jar extract")
)
app = dsl.image("eclipse-temurin:21-jre").workdir("/application")
for layer in ("dependencies", "spring-boot-loader", "snapshot-dependencies", "application"):
    app = app.copy(extract.path(f"/layers/{layer}/"), "./")
app = app.entrypoint("java", "org.springframework.boot.loader.launch.JarLauncher")
