    val apiKey = "2eIytYQuU8FItUhdKSWQdko9xmxoYh5s"
