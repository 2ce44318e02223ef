import imagedsl as dsl

NAME = "nothing to build here"
