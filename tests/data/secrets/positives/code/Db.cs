            var pwd = "QNzw9RLIY";
