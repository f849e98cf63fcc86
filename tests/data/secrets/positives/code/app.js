const clientSecret = "FKWzc0j2isaB6NPyCLU4muPdajORnozy";
