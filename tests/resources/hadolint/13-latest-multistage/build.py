import imagedsl as dsl

src = dsl.context(".", ignore=["Dockerfile", "build.py"])

build = dsl.image("maven:latest").workdir("/src").copy(src, ".").run("mvn -B package")
app = (
    dsl.image("eclipse-temurin:21-jre")
    .copy(build.path("/src/target/app.jar"), "/app.jar")
    .user("10001")
    .entrypoint("java", "-jar", "/app.jar")
)
