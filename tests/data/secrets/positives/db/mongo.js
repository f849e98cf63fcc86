const uri = 'mongodb+srv://admin:KiRJIfCVS0dZJByulE@cluster0.abcde.mongodb.net/test';
