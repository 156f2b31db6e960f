// SaeParser.g4 - the .sae language, version 1 (see docs/language.md).
// Every alternative is labelled so that it gets its own visit method.
parser grammar SaeParser;

options { tokenVocab = SaeLexer; }

file : model EOF ;

model : SAE name=IDENT LBRACE stmt* RBRACE ;

stmt
  : DIMS dimDef (COMMA dimDef)* SEMI                          # dimsStmt
  | INPUT name=IDENT COLON shape SEMI                         # inputStmt
  | kind=(PARAM | STATE) name=IDENT COLON shape (ASSIGN init=expr)? SEMI # paramStmt
  | LET name=IDENT ASSIGN expr SEMI                           # letStmt
  | ENCODE name=IDENT ASSIGN expr SEMI                        # encodeStmt
  | DECODE name=IDENT ASSIGN expr SEMI                        # decodeStmt
  | LOSS (name=IDENT)? ASSIGN expr SEMI                       # lossStmt
  | TRAIN LBRACE setting* RBRACE                              # trainStmt
  ;

setting : name=IDENT ASSIGN expr SEMI ;

dimDef : name=IDENT ASSIGN value=INT ;

shape : LBRACK (dimRef (COMMA dimRef)*)? RBRACK ;

dimRef
  : IDENT                                                     # namedDim
  | INT                                                       # literalDim
  ;

// Precedence from high to low: unary minus; @ * / (left); + - (left).
expr
  : MINUS expr                                                # negExpr
  | lhs=expr op=(AT | STAR | SLASH) rhs=expr                  # mulExpr
  | lhs=expr op=(PLUS | MINUS) rhs=expr                       # addExpr
  | callee=IDENT LPAREN (arg (COMMA arg)*)? RPAREN            # callExpr
  | IDENT                                                     # nameExpr
  | (INT | FLOAT)                                             # numberExpr
  | LBRACK (expr (COMMA expr)*)? RBRACK                       # listExpr
  | LPAREN expr RPAREN                                        # parenExpr
  ;

arg : (name=IDENT ASSIGN)? expr ;
