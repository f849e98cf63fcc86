BROKER = "amqp://worker:flSkz9qlfopCgf/64wLnh@rabbit:5672//"
