import imagedsl as dsl

a = dsl.image("alpine:3.20").copy(dsl.stage("b").path("/b"), "/from-b")
b = dsl.image("alpine:3.20").copy(dsl.stage("a").path("/a"), "/from-a")
