"""The Visual Studio template's Dockerfile: restore, publish, run on the ASP.NET image."""

import imagedsl as dsl

src = dsl.context(".", dockerignore=True)

build = (
    dsl.image("mcr.microsoft.com/dotnet/sdk:8.0")
    .arg("BUILD_CONFIGURATION", "Release")
    .workdir("/src")
    .copy(src.file("App.csproj"), "./")
    .run("dotnet restore App.csproj")
    .copy(src, ".")
    .run("dotnet publish App.csproj -c $BUILD_CONFIGURATION -o /app/publish /p:UseAppHost=false")
)
final = (
    dsl.image("mcr.microsoft.com/dotnet/aspnet:8.0")
    .workdir("/app")
    .expose(8080)
    .copy(build.path("/app/publish"), ".")
    .entrypoint("dotnet", "App.dll")
)
