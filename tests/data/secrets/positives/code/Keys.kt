    val apiKey = "KWzc0j2isaB6NPyCLU4muPdajORnozy2"
