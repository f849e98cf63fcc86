            var pwd = "7ai130JEef";
